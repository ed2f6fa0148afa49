//! Streaming writers for embeddings: JSON Lines, NumPy `.npy`, Arrow IPC and Parquet.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, FixedSizeListArray, Float32Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::ipc::writer::{FileWriter, StreamWriter};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;

use super::input::extension_lowercase;

/// The output extensions [`create_sink`] accepts.
pub const SUPPORTED_OUTPUT_EXTENSIONS: &[&str] = &[
    "jsonl", "ndjson", "npy", "arrow", "ipc", "arrows", "parquet",
];

/// Name of the text column in Arrow and Parquet outputs.
pub const TEXT_COLUMN: &str = "text";
/// Name of the embedding column in Arrow and Parquet outputs and the JSON Lines field.
pub const EMBEDDING_COLUMN: &str = "embedding";

const WRITE_BUFFER_BYTES: usize = 1 << 20;
const PARQUET_ROW_GROUP_BYTES: usize = 128 << 20;

/// Why embeddings could not be written. Rows count from 1 across all batches.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The output extension names no supported format.
    #[error(
        "{}: unsupported output format {}; supported extensions: {}",
        path.display(),
        extension.as_deref().map_or("(no extension)".to_owned(), |ext| format!("\".{ext}\"")),
        supported_list()
    )]
    UnsupportedExtension {
        path: PathBuf,
        /// The extension found, without the dot; `None` when the name has none.
        extension: Option<String>,
    },
    /// Creating or writing the file failed.
    #[error("cannot write {}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A batch has a different number of texts and vectors.
    #[error("{}: batch has {texts} texts but {vectors} vectors", path.display())]
    BatchLengthMismatch {
        path: PathBuf,
        texts: usize,
        vectors: usize,
    },
    /// A vector's length differs from the sink's dimension.
    #[error("{}: row {row}: vector has {found} values, expected {expected}", path.display())]
    Dimension {
        path: PathBuf,
        row: usize,
        expected: usize,
        found: usize,
    },
    /// JSON has no NaN or infinity, so such a value cannot be written as JSON Lines.
    #[error("{}: row {row}: value {index} is {value}, which JSON cannot represent", path.display())]
    NonFinite {
        path: PathBuf,
        row: usize,
        /// Position within the vector, counted from 0.
        index: usize,
        value: f32,
    },
    /// More rows were written than the sink was created for.
    #[error("{}: row {row} exceeds the {expected} rows the file was created for", path.display())]
    TooManyRows {
        path: PathBuf,
        expected: usize,
        row: usize,
    },
    /// `finish` was called before every announced row was written.
    #[error("{}: {written} rows written but the header announces {expected}; the file is incomplete", path.display())]
    RowCountMismatch {
        path: PathBuf,
        expected: usize,
        written: usize,
    },
    /// The Arrow IPC writer failed.
    #[error("{}: cannot write Arrow IPC", path.display())]
    Arrow { path: PathBuf, source: ArrowError },
    /// The Parquet writer failed.
    #[error("{}: cannot write Parquet", path.display())]
    Parquet { path: PathBuf, source: ParquetError },
}

fn supported_list() -> String {
    SUPPORTED_OUTPUT_EXTENSIONS
        .iter()
        .map(|ext| format!(".{ext}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A destination that receives embeddings batch after batch, in row order.
pub trait EmbeddingSink {
    /// Appends one batch. `texts[i]` is the text `vectors[i]` was computed from; formats
    /// without a text column ignore the texts. Every vector must have the sink's dimension.
    fn write_batch(&mut self, texts: &[String], vectors: &[Vec<f32>]) -> Result<(), OutputError>;

    /// Completes the file (footers, row count checks) and flushes it. A file whose sink
    /// is dropped without `finish` may be incomplete.
    fn finish(self: Box<Self>) -> Result<(), OutputError>;
}

/// Creates `path` (replacing an existing file) and returns a sink for vectors of length
/// `dimension`, choosing the format by extension (compared case-insensitively):
///
/// - `.jsonl`, `.ndjson`: `{"embedding":[...]}` a line; each value is written with the
///   fewest digits that parse back to the same `f32`.
/// - `.npy`: NumPy format 1.0, little-endian `float32`, shape `[total_rows, dimension]`.
///   The header is written first, so exactly `total_rows` rows must follow; `finish`
///   reports a different count.
/// - `.arrow`, `.ipc`: Arrow IPC file format; `.arrows`: Arrow IPC stream format.
/// - `.parquet`: Snappy-compressed Parquet.
///
/// Arrow and Parquet outputs have the schema
/// `text: Utf8 not null, embedding: FixedSizeList<Float32, dimension> not null`.
/// `total_rows` is only checked by `.npy`.
pub fn create_sink(
    path: &Path,
    dimension: usize,
    total_rows: usize,
) -> Result<Box<dyn EmbeddingSink>, OutputError> {
    check_output_path(path)?;
    let extension = extension_lowercase(path).unwrap_or_default();
    let file = File::create(path).map_err(|source| OutputError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let writer = BufWriter::with_capacity(WRITE_BUFFER_BYTES, file);
    let rows = RowChecker {
        path: path.to_path_buf(),
        dimension,
        written: 0,
    };
    Ok(match extension.as_str() {
        "jsonl" | "ndjson" => Box::new(JsonlSink { writer, rows }),
        "npy" => Box::new(NpySink::new(writer, rows, total_rows)?),
        "arrow" | "ipc" => Box::new(ArrowSink::<FileWriter<_>>::new(writer, rows)?),
        "arrows" => Box::new(ArrowSink::<StreamWriter<_>>::new(writer, rows)?),
        _ => Box::new(ParquetSink::new(writer, rows)?),
    })
}

/// Succeeds when [`create_sink`] knows the format of `path`'s extension; touches no file.
pub fn check_output_path(path: &Path) -> Result<(), OutputError> {
    let extension = extension_lowercase(path).unwrap_or_default();
    if SUPPORTED_OUTPUT_EXTENSIONS.contains(&extension.as_str()) {
        Ok(())
    } else {
        Err(OutputError::UnsupportedExtension {
            path: path.to_path_buf(),
            extension: path
                .extension()
                .map(|ext| ext.to_string_lossy().into_owned()),
        })
    }
}

/// Validates batches and counts rows for every sink.
struct RowChecker {
    path: PathBuf,
    dimension: usize,
    written: usize,
}

impl RowChecker {
    fn check(&self, texts: &[String], vectors: &[Vec<f32>]) -> Result<(), OutputError> {
        if texts.len() != vectors.len() {
            return Err(OutputError::BatchLengthMismatch {
                path: self.path.clone(),
                texts: texts.len(),
                vectors: vectors.len(),
            });
        }
        if let Some((i, vector)) = vectors
            .iter()
            .enumerate()
            .find(|(_, v)| v.len() != self.dimension)
        {
            return Err(OutputError::Dimension {
                path: self.path.clone(),
                row: self.written + i + 1,
                expected: self.dimension,
                found: vector.len(),
            });
        }
        Ok(())
    }

    fn io_error(&self, source: std::io::Error) -> OutputError {
        OutputError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn arrow_error(&self, source: ArrowError) -> OutputError {
        OutputError::Arrow {
            path: self.path.clone(),
            source,
        }
    }
}

struct JsonlSink {
    writer: BufWriter<File>,
    rows: RowChecker,
}

#[derive(serde::Serialize)]
struct JsonlRecord<'a> {
    embedding: &'a [f32],
}

impl EmbeddingSink for JsonlSink {
    fn write_batch(&mut self, texts: &[String], vectors: &[Vec<f32>]) -> Result<(), OutputError> {
        self.rows.check(texts, vectors)?;
        for (i, vector) in vectors.iter().enumerate() {
            if let Some((index, &value)) = vector.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                return Err(OutputError::NonFinite {
                    path: self.rows.path.clone(),
                    row: self.rows.written + i + 1,
                    index,
                    value,
                });
            }
        }
        for vector in vectors {
            serde_json::to_writer(&mut self.writer, &JsonlRecord { embedding: vector })
                .map_err(|err| self.rows.io_error(err.into()))?;
            self.writer
                .write_all(b"\n")
                .map_err(|err| self.rows.io_error(err))?;
            self.rows.written += 1;
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<(), OutputError> {
        self.writer.flush().map_err(|err| self.rows.io_error(err))
    }
}

struct NpySink {
    writer: BufWriter<File>,
    rows: RowChecker,
    total_rows: usize,
    row_bytes: Vec<u8>,
}

/// The NPY 1.0 header for a C-order little-endian `float32` array of `shape`, padded so
/// the data starts at a multiple of 64 bytes.
pub(super) fn npy_header(rows: usize, dimension: usize) -> Vec<u8> {
    let dict =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {dimension}), }}");
    let unpadded = 6 + 2 + 2 + dict.len() + 1;
    let padding = unpadded.next_multiple_of(64) - unpadded;
    let header_len = dict.len() + padding + 1;
    let mut header = Vec::with_capacity(unpadded + padding);
    header.extend_from_slice(b"\x93NUMPY");
    header.extend_from_slice(&[1, 0]);
    header.extend_from_slice(&(header_len as u16).to_le_bytes());
    header.extend_from_slice(dict.as_bytes());
    header.resize(header.len() + padding, b' ');
    header.push(b'\n');
    header
}

impl NpySink {
    fn new(
        mut writer: BufWriter<File>,
        rows: RowChecker,
        total_rows: usize,
    ) -> Result<Self, OutputError> {
        writer
            .write_all(&npy_header(total_rows, rows.dimension))
            .map_err(|err| rows.io_error(err))?;
        Ok(NpySink {
            row_bytes: Vec::with_capacity(rows.dimension * 4),
            writer,
            rows,
            total_rows,
        })
    }
}

impl EmbeddingSink for NpySink {
    fn write_batch(&mut self, texts: &[String], vectors: &[Vec<f32>]) -> Result<(), OutputError> {
        self.rows.check(texts, vectors)?;
        if self.rows.written + vectors.len() > self.total_rows {
            return Err(OutputError::TooManyRows {
                path: self.rows.path.clone(),
                expected: self.total_rows,
                row: self.total_rows + 1,
            });
        }
        for vector in vectors {
            self.row_bytes.clear();
            self.row_bytes
                .extend(vector.iter().flat_map(|value| value.to_le_bytes()));
            self.writer
                .write_all(&self.row_bytes)
                .map_err(|err| self.rows.io_error(err))?;
            self.rows.written += 1;
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<(), OutputError> {
        self.writer.flush().map_err(|err| self.rows.io_error(err))?;
        if self.rows.written != self.total_rows {
            return Err(OutputError::RowCountMismatch {
                path: self.rows.path.clone(),
                expected: self.total_rows,
                written: self.rows.written,
            });
        }
        Ok(())
    }
}

fn embedding_item_field() -> FieldRef {
    Arc::new(Field::new_list_field(DataType::Float32, true))
}

/// The schema of Arrow and Parquet outputs: `text: Utf8 not null`,
/// `embedding: FixedSizeList<Float32 (nullable item), dimension> not null`.
pub fn output_schema(dimension: usize) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(TEXT_COLUMN, DataType::Utf8, false),
        Field::new(
            EMBEDDING_COLUMN,
            DataType::FixedSizeList(embedding_item_field(), dimension as i32),
            false,
        ),
    ]))
}

fn record_batch(
    schema: &SchemaRef,
    dimension: usize,
    texts: &[String],
    vectors: &[Vec<f32>],
) -> Result<RecordBatch, ArrowError> {
    let text_array: ArrayRef = Arc::new(StringArray::from_iter_values(texts));
    let values = Float32Array::from_iter_values(vectors.iter().flatten().copied());
    let embedding_array: ArrayRef = Arc::new(FixedSizeListArray::try_new_with_length(
        embedding_item_field(),
        dimension as i32,
        Arc::new(values),
        None,
        vectors.len(),
    )?);
    RecordBatch::try_new(schema.clone(), vec![text_array, embedding_array])
}

/// The two Arrow IPC writers behind one interface.
trait IpcWriter: Sized {
    fn create(writer: BufWriter<File>, schema: &Schema) -> Result<Self, ArrowError>;
    fn write(&mut self, batch: &RecordBatch) -> Result<(), ArrowError>;
    fn into_writer(self) -> Result<BufWriter<File>, ArrowError>;
}

impl IpcWriter for FileWriter<BufWriter<File>> {
    fn create(writer: BufWriter<File>, schema: &Schema) -> Result<Self, ArrowError> {
        FileWriter::try_new(writer, schema)
    }
    fn write(&mut self, batch: &RecordBatch) -> Result<(), ArrowError> {
        FileWriter::write(self, batch)
    }
    fn into_writer(self) -> Result<BufWriter<File>, ArrowError> {
        self.into_inner()
    }
}

impl IpcWriter for StreamWriter<BufWriter<File>> {
    fn create(writer: BufWriter<File>, schema: &Schema) -> Result<Self, ArrowError> {
        StreamWriter::try_new(writer, schema)
    }
    fn write(&mut self, batch: &RecordBatch) -> Result<(), ArrowError> {
        StreamWriter::write(self, batch)
    }
    fn into_writer(self) -> Result<BufWriter<File>, ArrowError> {
        self.into_inner()
    }
}

struct ArrowSink<W> {
    writer: W,
    schema: SchemaRef,
    rows: RowChecker,
}

impl<W: IpcWriter> ArrowSink<W> {
    fn new(writer: BufWriter<File>, rows: RowChecker) -> Result<Self, OutputError> {
        let schema = output_schema(rows.dimension);
        let writer = W::create(writer, &schema).map_err(|err| rows.arrow_error(err))?;
        Ok(ArrowSink {
            writer,
            schema,
            rows,
        })
    }
}

impl<W: IpcWriter> EmbeddingSink for ArrowSink<W> {
    fn write_batch(&mut self, texts: &[String], vectors: &[Vec<f32>]) -> Result<(), OutputError> {
        self.rows.check(texts, vectors)?;
        if vectors.is_empty() {
            return Ok(());
        }
        let batch = record_batch(&self.schema, self.rows.dimension, texts, vectors)
            .map_err(|err| self.rows.arrow_error(err))?;
        self.writer
            .write(&batch)
            .map_err(|err| self.rows.arrow_error(err))?;
        self.rows.written += vectors.len();
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<(), OutputError> {
        let ArrowSink { writer, rows, .. } = *self;
        let mut inner = writer.into_writer().map_err(|err| rows.arrow_error(err))?;
        inner.flush().map_err(|err| rows.io_error(err))
    }
}

struct ParquetSink {
    writer: ArrowWriter<BufWriter<File>>,
    schema: SchemaRef,
    rows: RowChecker,
}

impl ParquetSink {
    fn new(writer: BufWriter<File>, rows: RowChecker) -> Result<Self, OutputError> {
        let schema = output_schema(rows.dimension);
        let properties = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_dictionary_enabled(false)
            .set_max_row_group_bytes(Some(PARQUET_ROW_GROUP_BYTES))
            .build();
        let writer = ArrowWriter::try_new(writer, schema.clone(), Some(properties))
            .map_err(|source| rows.parquet_error(source))?;
        Ok(ParquetSink {
            writer,
            schema,
            rows,
        })
    }
}

impl RowChecker {
    fn parquet_error(&self, source: ParquetError) -> OutputError {
        OutputError::Parquet {
            path: self.path.clone(),
            source,
        }
    }
}

impl EmbeddingSink for ParquetSink {
    fn write_batch(&mut self, texts: &[String], vectors: &[Vec<f32>]) -> Result<(), OutputError> {
        self.rows.check(texts, vectors)?;
        if vectors.is_empty() {
            return Ok(());
        }
        let batch = record_batch(&self.schema, self.rows.dimension, texts, vectors)
            .map_err(|err| self.rows.arrow_error(err))?;
        self.writer
            .write(&batch)
            .map_err(|err| self.rows.parquet_error(err))?;
        self.rows.written += vectors.len();
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<(), OutputError> {
        let ParquetSink { writer, rows, .. } = *self;
        writer
            .close()
            .map(drop)
            .map_err(|err| rows.parquet_error(err))
    }
}
