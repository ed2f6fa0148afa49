//! The columns of Flight streams: the `text` column read from clients and
//! the `embedding` column added to their rows.

use std::str::FromStr;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeListArray, Float16Array, Float32Array, RecordBatch,
    StringArray,
};
use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use arrow::error::ArrowError;
use half::f16;
use serde::Deserialize;

use crate::error::InputError;

/// Name of the column holding the texts to embed.
pub const TEXT_COLUMN: &str = "text";

/// Name of the column of vectors added to every row.
pub const EMBEDDING_COLUMN: &str = "embedding";

/// The element type of the `embedding` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(try_from = "String")]
pub enum VectorFormat {
    /// 32-bit floats, as the model computes them.
    #[default]
    F32,
    /// 16-bit floats: half the bytes, about three significant digits.
    F16,
}

impl FromStr for VectorFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(Self::F32),
            "f16" | "float16" => Ok(Self::F16),
            _ => Err(format!("unknown vector format `{s}`, expected f32 or f16")),
        }
    }
}

impl TryFrom<String> for VectorFormat {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl VectorFormat {
    fn element(self) -> DataType {
        match self {
            Self::F32 => DataType::Float32,
            Self::F16 => DataType::Float16,
        }
    }
}

/// Where the texts of a client stream are, and the schema of the rows sent
/// back: the client's columns followed by `embedding`.
#[derive(Debug, Clone)]
pub(crate) struct StreamLayout {
    text_index: usize,
    output: SchemaRef,
    item: FieldRef,
    dimension: i32,
    format: VectorFormat,
}

impl StreamLayout {
    /// Checks the client's schema and derives the answer's, with vectors of
    /// `dimension` components in `format`.
    pub(crate) fn new(
        input: &Schema,
        dimension: usize,
        format: VectorFormat,
    ) -> Result<Self, InputError> {
        let Ok(text_index) = input.index_of(TEXT_COLUMN) else {
            let columns: Vec<&str> = input.fields().iter().map(|f| f.name().as_str()).collect();
            return Err(InputError::NoTextColumn {
                columns: columns.join(", "),
            });
        };
        let text_type = input.field(text_index).data_type();
        if !matches!(
            text_type,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        ) {
            return Err(InputError::TextType {
                found: text_type.clone(),
            });
        }
        if input.index_of(EMBEDDING_COLUMN).is_ok() {
            return Err(InputError::HasEmbedding);
        }
        let dimension = i32::try_from(dimension).map_err(|_| InputError::Dimensions {
            got: dimension,
            max: i32::MAX as usize,
        })?;
        let item = Arc::new(Field::new("item", format.element(), false));
        let mut fields: Vec<FieldRef> = input.fields().iter().cloned().collect();
        fields.push(embedding_field(item.clone(), dimension));
        let output = Arc::new(Schema::new_with_metadata(fields, input.metadata().clone()));
        Ok(Self {
            text_index,
            output,
            item,
            dimension,
            format,
        })
    }

    /// The schema of the rows sent back.
    pub(crate) fn output_schema(&self) -> SchemaRef {
        self.output.clone()
    }

    /// The texts of `batch`, whose first row is row `first_row` of the
    /// stream; refuses a null text.
    pub(crate) fn texts(
        &self,
        batch: &RecordBatch,
        first_row: usize,
    ) -> Result<Vec<String>, InputError> {
        let column = batch.column(self.text_index);
        if let Some(row) = (0..column.len()).find(|&i| column.is_null(i)) {
            return Err(InputError::NullText {
                row: first_row + row,
            });
        }
        let texts = match column.data_type() {
            DataType::Utf8 => column
                .as_string::<i32>()
                .iter()
                .flatten()
                .map(str::to_owned)
                .collect(),
            DataType::LargeUtf8 => column
                .as_string::<i64>()
                .iter()
                .flatten()
                .map(str::to_owned)
                .collect(),
            DataType::Utf8View => column
                .as_string_view()
                .iter()
                .flatten()
                .map(str::to_owned)
                .collect(),
            other => {
                return Err(InputError::TextType {
                    found: other.clone(),
                })
            }
        };
        Ok(texts)
    }

    /// `batch` with the `embedding` column of `vectors` added, one vector a
    /// row.
    pub(crate) fn attach(
        &self,
        batch: &RecordBatch,
        vectors: &[Vec<f32>],
    ) -> Result<RecordBatch, ArrowError> {
        if vectors.len() != batch.num_rows() {
            return Err(ArrowError::InvalidArgumentError(format!(
                "{} vectors for {} rows",
                vectors.len(),
                batch.num_rows()
            )));
        }
        let embedding = vector_array(self.item.clone(), self.dimension, self.format, vectors)?;
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        columns.push(Arc::new(embedding));
        RecordBatch::try_new(self.output.clone(), columns)
    }
}

fn embedding_field(item: FieldRef, dimension: i32) -> FieldRef {
    Arc::new(Field::new(
        EMBEDDING_COLUMN,
        DataType::FixedSizeList(item, dimension),
        false,
    ))
}

fn vector_array(
    item: FieldRef,
    dimension: i32,
    format: VectorFormat,
    vectors: &[Vec<f32>],
) -> Result<FixedSizeListArray, ArrowError> {
    let expected = usize::try_from(dimension).unwrap_or(0);
    if let Some((row, v)) = vectors
        .iter()
        .enumerate()
        .find(|(_, v)| v.len() != expected)
    {
        return Err(ArrowError::InvalidArgumentError(format!(
            "vector {row} has {} components, expected {expected}",
            v.len()
        )));
    }
    let values = vectors.iter().flatten().copied();
    let values: ArrayRef = match format {
        VectorFormat::F32 => Arc::new(Float32Array::from_iter_values(values)),
        VectorFormat::F16 => Arc::new(Float16Array::from_iter_values(values.map(f16::from_f32))),
    };
    FixedSizeListArray::try_new(item, dimension, values, None)
}

/// A record batch of `texts` and their `vectors`: a Utf8 `text` column and
/// an `embedding` column of Float32 lists as long as the first vector, the
/// shape [`SinkHandle::submit`](crate::SinkHandle::submit) takes from the
/// HTTP routes. Fails when the counts differ or a vector's length differs
/// from the first's.
pub fn rows_to_batch(texts: &[String], vectors: &[Vec<f32>]) -> Result<RecordBatch, ArrowError> {
    if texts.len() != vectors.len() {
        return Err(ArrowError::InvalidArgumentError(format!(
            "{} texts but {} vectors",
            texts.len(),
            vectors.len()
        )));
    }
    let dimension = vectors.first().map_or(0, Vec::len);
    let dimension = i32::try_from(dimension).map_err(|_| {
        ArrowError::InvalidArgumentError(format!("dimension {dimension} is too large"))
    })?;
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let embedding = vector_array(item.clone(), dimension, VectorFormat::F32, vectors)?;
    let schema = Arc::new(Schema::new(vec![
        Arc::new(Field::new(TEXT_COLUMN, DataType::Utf8, false)),
        embedding_field(item, dimension),
    ]));
    let text = StringArray::from_iter_values(texts.iter().map(String::as_str));
    RecordBatch::try_new(schema, vec![Arc::new(text), Arc::new(embedding)])
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, LargeStringArray};

    use super::*;

    fn batch(texts: Vec<Option<&str>>) -> RecordBatch {
        let n = texts.len() as i64;
        RecordBatch::try_from_iter(vec![
            (
                "id",
                Arc::new(Int64Array::from_iter_values(0..n)) as ArrayRef,
            ),
            ("text", Arc::new(LargeStringArray::from(texts)) as ArrayRef),
        ])
        .unwrap()
    }

    #[test]
    fn attach_adds_the_embedding_column_after_the_others() {
        let input = batch(vec![Some("a"), Some("b")]);
        let layout = StreamLayout::new(&input.schema(), 3, VectorFormat::F16).unwrap();
        assert_eq!(layout.texts(&input, 0).unwrap(), vec!["a", "b"]);
        let out = layout
            .attach(&input, &[vec![1.0, 2.0, 3.0], vec![4.0, 5.0, 6.5]])
            .unwrap();
        assert_eq!(out.schema().field(2).name(), "embedding");
        let list = out.column(2).as_fixed_size_list();
        let values = list
            .values()
            .as_primitive::<arrow::datatypes::Float16Type>();
        assert_eq!(values.value(5), f16::from_f32(6.5));
        assert_eq!(out.column(0).as_ref(), input.column(0).as_ref());
    }

    #[test]
    fn null_texts_are_named_by_their_row_in_the_stream() {
        let input = batch(vec![Some("a"), None]);
        let layout = StreamLayout::new(&input.schema(), 3, VectorFormat::F32).unwrap();
        let err = layout.texts(&input, 10).unwrap_err();
        assert_eq!(err.to_string(), "row 11 of column `text` is null");
    }

    #[test]
    fn schemas_without_usable_text_are_refused() {
        let no_text = RecordBatch::try_from_iter(vec![(
            "body",
            Arc::new(StringArray::from(vec!["x"])) as ArrayRef,
        )])
        .unwrap();
        let err = StreamLayout::new(&no_text.schema(), 3, VectorFormat::F32).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the stream has no `text` column (columns: body)"
        );
        let ints = RecordBatch::try_from_iter(vec![(
            "text",
            Arc::new(Int64Array::from(vec![1])) as ArrayRef,
        )])
        .unwrap();
        let err = StreamLayout::new(&ints.schema(), 3, VectorFormat::F32).unwrap_err();
        assert!(err.to_string().contains("column `text` is Int64"), "{err}");
    }

    #[test]
    fn rows_to_batch_checks_lengths() {
        let texts = vec!["a".to_owned(), "b".to_owned()];
        let out = rows_to_batch(&texts, &[vec![0.5; 4], vec![0.25; 4]]).unwrap();
        assert_eq!(out.num_rows(), 2);
        assert_eq!(
            out.schema().field(1).data_type(),
            &DataType::FixedSizeList(Arc::new(Field::new("item", DataType::Float32, false)), 4)
        );
        let err = rows_to_batch(&texts, &[vec![0.5; 4], vec![0.25; 3]]).unwrap_err();
        assert!(
            err.to_string().contains("vector 1 has 3 components"),
            "{err}"
        );
        assert!(rows_to_batch(&texts, &[vec![0.5; 4]]).is_err());
    }
}
