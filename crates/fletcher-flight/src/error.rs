//! Errors of the Flight service, and the gRPC status each one answers.

use std::net::SocketAddr;

use arrow::datatypes::DataType;
use fletcher_engine::EngineError;
use tonic::{Code, Status};

use crate::sink::SinkError;

/// Why the Flight service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum FlightError {
    /// The address could not be bound.
    #[error("could not listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the operating system reported.
        #[source]
        source: std::io::Error,
    },
    /// The gRPC server failed while serving.
    #[error("Flight server failed: {0}")]
    Serve(#[source] tonic::transport::Error),
}

/// Why a client's stream or call options cannot be embedded; answered with
/// `INVALID_ARGUMENT` and this message.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The schema has no `text` column.
    #[error("the stream has no `text` column (columns: {columns})")]
    NoTextColumn {
        /// The columns the stream has, comma-separated.
        columns: String,
    },
    /// The `text` column is not a string column.
    #[error("column `text` is {found}, expected Utf8, LargeUtf8 or Utf8View")]
    TextType {
        /// The column's type.
        found: DataType,
    },
    /// A row's text is null.
    #[error("row {row} of column `text` is null")]
    NullText {
        /// The row's position in the stream, counted from 0.
        row: usize,
    },
    /// The stream already has the column the answer adds.
    #[error("the stream already has an `embedding` column; drop or rename it")]
    HasEmbedding,
    /// The stream ended before its schema.
    #[error("the stream ended before a schema message")]
    NoSchema,
    /// A second schema arrived mid-stream.
    #[error("the stream changed its schema after {rows} rows; send one schema per call")]
    SchemaChanged {
        /// Rows read before the new schema.
        rows: usize,
    },
    /// The Arrow IPC data could not be decoded.
    #[error("the stream could not be decoded: {0}")]
    Decode(String),
    /// The descriptor's `cmd` is not valid options JSON.
    #[error("descriptor cmd is not valid options JSON: {0}")]
    Options(String),
    /// The descriptor's path is not one dataset name.
    #[error("descriptor path must be one dataset name, got {0:?}")]
    Path(Vec<String>),
    /// The `x-fletcher-format` header names no known format.
    #[error("header x-fletcher-format: {0}")]
    FormatHeader(String),
    /// The dimensions asked for are out of range.
    #[error("dimensions must be between 1 and {max}, got {got}")]
    Dimensions {
        /// The dimensions asked for.
        got: usize,
        /// The model's dimension.
        max: usize,
    },
}

impl From<InputError> for Status {
    fn from(e: InputError) -> Self {
        Status::invalid_argument(e.to_string())
    }
}

/// The status answering an engine error.
pub(crate) fn engine_status(e: &EngineError) -> Status {
    let message = e.to_string();
    match e {
        EngineError::Overloaded { .. } => Status::resource_exhausted(message),
        EngineError::InvalidOption(_)
        | EngineError::TooLong { .. }
        | EngineError::Tokenize { .. } => Status::invalid_argument(message),
        EngineError::Timeout { .. } => Status::deadline_exceeded(message),
        EngineError::ShuttingDown => Status::unavailable(message),
        _ => Status::internal(message),
    }
}

/// The status answering a refused submission to the sink; `accepted` rows
/// of the call were buffered before it.
pub(crate) fn sink_status(e: &SinkError, accepted: usize) -> Status {
    let message = format!("{e} ({accepted} rows of this call were accepted before)");
    match e {
        SinkError::Full { .. } | SinkError::TooLarge { .. } => Status::resource_exhausted(message),
        SinkError::Closed => Status::unavailable(message),
        _ => Status::internal(message),
    }
}

/// The `error_type` label of `fletcher_errors_total` for a status, as the
/// HTTP routes name the same failures; `None` for statuses that are no
/// failure of the server's (a client cancelling).
pub(crate) fn error_type(code: Code) -> Option<&'static str> {
    match code {
        Code::Ok | Code::Cancelled => None,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => Some("Validation"),
        Code::ResourceExhausted => Some("Overloaded"),
        Code::DeadlineExceeded => Some("Timeout"),
        Code::Unavailable => Some("Unhealthy"),
        Code::Unimplemented | Code::NotFound => Some("NotFound"),
        _ => Some("Internal"),
    }
}
