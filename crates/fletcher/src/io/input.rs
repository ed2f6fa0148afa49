//! Reading the texts to embed from JSON Lines, plain text, Parquet and Arrow IPC files.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::ipc::reader::{FileReader, StreamReader};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use parquet::errors::ParquetError;

/// Name of the field (JSON Lines) or column (Parquet, Arrow) that holds the text.
pub const TEXT_FIELD: &str = "text";

const ARROW_MAGIC: &[u8; 6] = b"ARROW1";
const UTF8_BOM: &[u8; 3] = b"\xEF\xBB\xBF";

/// Why a text file could not be read. Line and row numbers count from 1.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The file could not be opened or read.
    #[error("cannot read {}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A line is not valid UTF-8.
    #[error("{}:{line}: invalid UTF-8 at byte {byte} of the line", path.display())]
    InvalidUtf8 {
        path: PathBuf,
        line: usize,
        /// Offset of the first invalid byte within the line, counted from 0.
        byte: usize,
    },
    /// A JSON Lines line does not parse as JSON.
    #[error("{}:{line}: not valid JSON: {message}", path.display())]
    NotJson {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// A JSON Lines line is JSON but not an object.
    #[error("{}:{line}: expected a JSON object with a string \"text\" field, found {found}", path.display())]
    NotAnObject {
        path: PathBuf,
        line: usize,
        found: &'static str,
    },
    /// A JSON Lines object has no `text` field.
    #[error("{}:{line}: the JSON object has no \"text\" field", path.display())]
    MissingTextField { path: PathBuf, line: usize },
    /// A JSON Lines object has a `text` field that is not a string.
    #[error("{}:{line}: \"text\" is {found}, expected a string", path.display())]
    TextNotString {
        path: PathBuf,
        line: usize,
        found: &'static str,
    },
    /// A Parquet or Arrow file has no `text` column.
    #[error("{}: no \"text\" column (columns: {columns})", path.display())]
    MissingColumn { path: PathBuf, columns: String },
    /// The `text` column has a type other than a string type.
    #[error("{}: column \"text\" has type {found}, expected Utf8, LargeUtf8 or Utf8View", path.display())]
    ColumnType { path: PathBuf, found: String },
    /// The `text` column holds a null.
    #[error("{}: row {row}: \"text\" is null", path.display())]
    NullText { path: PathBuf, row: usize },
    /// The Arrow IPC file or stream is malformed.
    #[error("{}: cannot read as Arrow IPC ({format})", path.display())]
    Arrow {
        path: PathBuf,
        /// `"file"` or `"stream"`: the format picked from the first bytes.
        format: &'static str,
        source: ArrowError,
    },
    /// The Parquet file is malformed.
    #[error("{}: cannot read as Parquet", path.display())]
    Parquet { path: PathBuf, source: ParquetError },
}

/// Reads every text of `path`, in file order, choosing the format by extension
/// (compared case-insensitively):
///
/// - `.jsonl`, `.ndjson`: one JSON object a line with a string `text` field; other
///   fields are ignored. Lines that are empty or only whitespace are skipped.
/// - `.parquet`: the `text` column, of type Utf8, LargeUtf8 or Utf8View; a null is an
///   error naming its row.
/// - `.arrow`, `.arrows`, `.ipc`: the same column rule, in the Arrow IPC file format
///   when the file starts with `ARROW1`, else in the IPC stream format.
/// - anything else (`.txt` included): one text a line. Every line is a text, empty
///   lines included, so text `i` is line `i + 1`; a final line terminator does not start
///   a new text. Lines end at `\n`, and a `\r` before it is dropped. A UTF-8 byte order
///   mark at the start of the file is dropped.
///
/// Line-oriented formats must be UTF-8; the error for a bad line names the file and line.
pub fn read_texts(path: &Path) -> Result<Vec<String>, InputError> {
    match extension_lowercase(path).as_deref() {
        Some("jsonl" | "ndjson") => read_jsonl(path),
        Some("parquet") => read_parquet(path),
        Some("arrow" | "arrows" | "ipc") => read_arrow_ipc(path),
        _ => read_lines(path),
    }
}

pub(crate) fn extension_lowercase(path: &Path) -> Option<String> {
    path.extension()
        .and_then(|ext| ext.to_str())
        .map(str::to_ascii_lowercase)
}

fn open(path: &Path) -> Result<File, InputError> {
    File::open(path).map_err(|source| InputError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Calls `on_line(line_number, text)` for every line of `path`, with the terminator
/// (`\n` or `\r\n`) and a leading byte order mark removed.
fn for_each_line(
    path: &Path,
    mut on_line: impl FnMut(usize, &str) -> Result<(), InputError>,
) -> Result<(), InputError> {
    let mut reader = BufReader::with_capacity(1 << 16, open(path)?);
    let mut buf = Vec::new();
    let mut line = 0usize;
    loop {
        buf.clear();
        let read = reader
            .read_until(b'\n', &mut buf)
            .map_err(|source| InputError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        if read == 0 {
            return Ok(());
        }
        line += 1;
        let mut bytes = buf.as_slice();
        if let Some(rest) = bytes.strip_suffix(b"\n") {
            bytes = rest.strip_suffix(b"\r").unwrap_or(rest);
        }
        if line == 1 {
            bytes = bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes);
        }
        let text = std::str::from_utf8(bytes).map_err(|err| InputError::InvalidUtf8 {
            path: path.to_path_buf(),
            line,
            byte: err.valid_up_to(),
        })?;
        on_line(line, text)?;
    }
}

fn read_lines(path: &Path) -> Result<Vec<String>, InputError> {
    let mut texts = Vec::new();
    for_each_line(path, |_, text| {
        texts.push(text.to_owned());
        Ok(())
    })?;
    Ok(texts)
}

#[derive(serde::Deserialize)]
struct TextRecord {
    text: String,
}

fn read_jsonl(path: &Path) -> Result<Vec<String>, InputError> {
    let mut texts = Vec::new();
    for_each_line(path, |line, content| {
        if content.trim().is_empty() {
            return Ok(());
        }
        // A derived struct also accepts a JSON array, so only objects take the fast path.
        let parsed = if content.trim_start().starts_with('{') {
            serde_json::from_str::<TextRecord>(content).map_err(|err| err.to_string())
        } else {
            Err(String::new())
        };
        match parsed {
            Ok(record) => {
                texts.push(record.text);
                Ok(())
            }
            Err(message) => Err(classify_json_line(path, line, content, message)),
        }
    })?;
    Ok(texts)
}

/// Explains why `content` is not an object with a string `text` field; `record_error`
/// is what the typed parse said, used when the line is otherwise well formed.
fn classify_json_line(path: &Path, line: usize, content: &str, record_error: String) -> InputError {
    let path = path.to_path_buf();
    let value = match serde_json::from_str::<serde_json::Value>(content) {
        Ok(value) => value,
        Err(err) => {
            return InputError::NotJson {
                path,
                line,
                message: err.to_string(),
            }
        }
    };
    let serde_json::Value::Object(map) = value else {
        return InputError::NotAnObject {
            path,
            line,
            found: json_kind(&value),
        };
    };
    match map.get(TEXT_FIELD) {
        None => InputError::MissingTextField { path, line },
        Some(serde_json::Value::String(_)) => InputError::NotJson {
            path,
            line,
            message: record_error,
        },
        Some(other) => InputError::TextNotString {
            path,
            line,
            found: json_kind(other),
        },
    }
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Index of the `text` column in `schema`, or the error listing the columns present.
fn text_column_index(path: &Path, schema: &Schema) -> Result<usize, InputError> {
    schema
        .fields()
        .iter()
        .position(|field| field.name() == TEXT_FIELD)
        .ok_or_else(|| InputError::MissingColumn {
            path: path.to_path_buf(),
            columns: schema
                .fields()
                .iter()
                .map(|field| format!("{:?}", field.name()))
                .collect::<Vec<_>>()
                .join(", "),
        })
}

fn check_text_type(path: &Path, data_type: &DataType) -> Result<(), InputError> {
    match data_type {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Ok(()),
        other => Err(InputError::ColumnType {
            path: path.to_path_buf(),
            found: other.to_string(),
        }),
    }
}

/// Appends the strings of column `column` of `batch` to `texts`; `first_row` is the
/// 1-based row number of the batch's first row in the file.
fn append_text_column(
    path: &Path,
    batch: &RecordBatch,
    column: usize,
    first_row: usize,
    texts: &mut Vec<String>,
) -> Result<(), InputError> {
    let array = batch.column(column);
    if let Some(index) = (0..array.len()).find(|&i| array.is_null(i)) {
        return Err(InputError::NullText {
            path: path.to_path_buf(),
            row: first_row + index,
        });
    }
    texts.reserve(array.len());
    match array.data_type() {
        DataType::Utf8 => texts.extend(array.as_string::<i32>().iter().flatten().map(String::from)),
        DataType::LargeUtf8 => {
            texts.extend(array.as_string::<i64>().iter().flatten().map(String::from))
        }
        DataType::Utf8View => {
            texts.extend(array.as_string_view().iter().flatten().map(String::from))
        }
        other => {
            return Err(InputError::ColumnType {
                path: path.to_path_buf(),
                found: other.to_string(),
            })
        }
    }
    Ok(())
}

fn read_parquet(path: &Path) -> Result<Vec<String>, InputError> {
    let parquet_err = |source| InputError::Parquet {
        path: path.to_path_buf(),
        source,
    };
    let builder = ParquetRecordBatchReaderBuilder::try_new(open(path)?).map_err(parquet_err)?;
    let column = text_column_index(path, builder.schema())?;
    check_text_type(path, builder.schema().field(column).data_type())?;
    let mask = ProjectionMask::roots(builder.parquet_schema(), [column]);
    let reader = builder.with_projection(mask).build().map_err(parquet_err)?;
    let mut texts = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|source| InputError::Parquet {
            path: path.to_path_buf(),
            source: source.into(),
        })?;
        let first_row = texts.len() + 1;
        append_text_column(path, &batch, 0, first_row, &mut texts)?;
    }
    Ok(texts)
}

fn read_arrow_ipc(path: &Path) -> Result<Vec<String>, InputError> {
    let mut file = open(path)?;
    let mut magic = [0u8; 6];
    let is_file_format = match file.read_exact(&mut magic) {
        Ok(()) => &magic == ARROW_MAGIC,
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => false,
        Err(source) => {
            return Err(InputError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    drop(file);
    let format = if is_file_format { "file" } else { "stream" };
    let arrow_err = |source| InputError::Arrow {
        path: path.to_path_buf(),
        format,
        source,
    };
    let open_batches = |projection: Option<Vec<usize>>| -> Result<IpcBatches, InputError> {
        let file = open(path)?;
        Ok(if is_file_format {
            let reader = FileReader::try_new_buffered(file, projection).map_err(arrow_err)?;
            (reader.schema(), Box::new(reader))
        } else {
            let reader = StreamReader::try_new_buffered(file, projection).map_err(arrow_err)?;
            (reader.schema(), Box::new(reader))
        })
    };
    let (schema, _) = open_batches(None)?;
    let column = text_column_index(path, &schema)?;
    check_text_type(path, schema.field(column).data_type())?;
    let (_, batches) = open_batches(Some(vec![column]))?;
    let mut texts = Vec::new();
    for batch in batches {
        let batch = batch.map_err(arrow_err)?;
        let first_row = texts.len() + 1;
        append_text_column(path, &batch, 0, first_row, &mut texts)?;
    }
    Ok(texts)
}

type IpcBatches = (
    SchemaRef,
    Box<dyn Iterator<Item = Result<RecordBatch, ArrowError>>>,
);
